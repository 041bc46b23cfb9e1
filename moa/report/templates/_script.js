// Click a bar: open and show that call's answer. Inline, no network: the report is one file.
document.documentElement.classList.add("js");
document.addEventListener("click", function (event) {
  var bar = event.target.closest(".bar");
  if (!bar) return;
  var target = document.getElementById("call-" + bar.dataset.call);
  if (!target) return;
  document.querySelectorAll(".focus").forEach(function (el) { el.classList.remove("focus"); });
  bar.classList.add("focus");
  target.classList.add("focus");
  target.open = true;
  target.scrollIntoView({ behavior: "smooth", block: "center" });
});
