// Click a bar (or open the page at #call-N): open and show that call's answer. Inline, no
// network: the report is one file.
document.documentElement.classList.add("js");
function showCall(id) {
  var target = document.getElementById("call-" + id);
  if (!target) return;
  document.querySelectorAll(".focus").forEach(function (el) { el.classList.remove("focus"); });
  var bar = document.getElementById("bar-" + id);
  if (bar) bar.classList.add("focus");
  target.classList.add("focus");
  target.open = true;
  target.scrollIntoView({ block: "center" });
}
document.addEventListener("click", function (event) {
  var bar = event.target.closest(".bar");
  if (bar) showCall(bar.dataset.call);
});
var wanted = /^#call-(\w[\w-]*)$/.exec(location.hash);
if (wanted) showCall(wanted[1]);
