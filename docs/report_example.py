"""Make the example run report shown in README (docs/report-example.png).

A 3x4+1 mixture with an annotator, run against the loopback fake provider, with one call
retried, one answered by its fallback, one failing, one straggler cut off by the layer
deadline and one answer containing HTML. Writes `<out>/report-example.html`, the result as
`<out>/result.json` and, if chromium is installed, `<out>/report-example.png`:

    python docs/report_example.py docs
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic import SecretStr

from moa import MoAResult, Settings, create_moa_from_config
from moa.report import write_report
from moa.testing import FakeProvider, Reply

PRICE = {"input_cost_per_token": 0.9e-6, "output_cost_per_token": 1.2e-6}
MODELS = ("m/llama-70b", "m/qwen-72b", "m/gemma-27b", "m/deepseek-v3")
CONFIG = {
    "use_annotator": True,
    "annotator": {"model": "m/annotator", **PRICE},
    "retry": {"max_retries": 2, "backoff_base": 0.05, "backoff_max": 0.05},
    "seed": 3,
    "proposal_layers": [
        {
            "neurons": [
                {"model": MODELS[0], **PRICE},
                {"model": MODELS[1], **PRICE},
                {"model": MODELS[2], **PRICE},
                {"model": MODELS[3], "fallbacks": ["m/mixtral"], **PRICE},
            ],
            "deadline": 0.5,
        },
        {"neurons": [{"model": m, "name": f"{m[2:]} refine", **PRICE} for m in MODELS]},
        {"neurons": [{"model": m, "name": f"{m[2:]} final", **PRICE} for m in MODELS]},
    ],
    "aggregation_layer": {"model": "m/aggregator", "shuffle": True, **PRICE},
}
CONFIG["proposal_layers"][2]["neurons"][2]["weight"] = 2  # type: ignore[index]

# Flags that keep headless chromium off the network: no background services, and every
# host name resolves to nothing.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
    "--no-pings",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def run_chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


def script(fake: FakeProvider) -> None:
    fake.script("m/annotator", Reply(latency=0.08, content="Why does the sky look blue by day?"))
    fake.script(
        MODELS[0],
        Reply(latency=0.25, content="Rayleigh scattering: <b>blue</b> light scatters more. "
              "<script>document.title='pwned'</script>"),
        Reply(latency=0.3, content="Refined: scattering goes as 1/wavelength^4."),
        Reply(latency=0.2),
    )  # fmt: skip
    fake.script(
        MODELS[1],
        Reply(status=503),  # retried
        Reply(latency=0.15, content="Air molecules scatter blue light more than red."),
        Reply(latency=0.35),
        Reply(latency=0.33),
    )
    fake.script(MODELS[2], Reply(latency=2.0), Reply(latency=0.2), Reply(latency=0.28))
    fake.script(MODELS[3], Reply(status=401), Reply(status=400), Reply(latency=0.1))
    fake.script("m/mixtral", Reply(latency=0.2, content="Shorter wavelengths scatter more."))
    fake.script(
        "m/aggregator",
        Reply(latency=0.45, content="The sky is blue because air molecules scatter sunlight's "
              "short (blue) wavelengths far more than long (red) ones: Rayleigh scattering."),
    )  # fmt: skip


async def example_result() -> MoAResult:
    with FakeProvider() as fake:
        script(fake)
        settings = Settings(
            provider_api_key=SecretStr("sk-example"), base_url=fake.base_url, max_retries=0
        )
        async with create_moa_from_config(CONFIG, settings=settings) as moa:
            await moa.prepare()  # load litellm before the clock starts
            return await moa.process("Why is the sky blue?")


def main(out: Path) -> None:
    os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(example_result())
    (out / "result.json").write_text(result.model_dump_json(indent=2), encoding="utf-8")
    html = write_report(result, out / "report-example.html", title="moa run: Why is the sky blue?")
    print(f"{html}: {html.stat().st_size} bytes")
    if chromium() is not None:
        png = out / "report-example.png"
        done = run_chromium(
            "--window-size=1100,1080", f"--screenshot={png}", html.resolve().as_uri()
        )
        if done.returncode != 0 or not png.exists():
            sys.exit(f"chromium failed: {done.stderr[-2000:]}")
        print(f"{png}: {png.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
