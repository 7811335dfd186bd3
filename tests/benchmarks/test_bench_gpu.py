"""bench_gpu.py --dry_run: every section of the prepared GPU benchmark runs on the CPU; its FPS and sentence-batching
arithmetic is checked with a stepping clock, its differences against the float32 rounding level."""
import json

import pytest

from benchmarks import bench_gpu, fps_protocol
from tests.benchmarks.test_bench_fps import StepClock

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dry_run_runs_every_section_and_ends_with_json(capsys, monkeypatch):
    """Every section on the CPU; the compiled fps run is left to the slow gpu_check dry run (dynamo's tracing
    alone takes ~20 s here). Each timed call reads the stepping clock twice: it lasts 0.25 s."""
    monkeypatch.setattr(fps_protocol, "time", StepClock(0.25))  # the FPS and the sentence timings read it
    monkeypatch.setenv(bench_gpu.ALLOCATOR_ENV, "set by the test")
    monkeypatch.delenv(bench_gpu.ALLOCATOR_ENV)  # unset now; after the test, as before it (main() sets it)
    bench_gpu.main(["--dry_run", "--json", "--repeat", "1", "--videos", "1", "--rounds", "1",
                    "--compile_backend", "none"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sections = summary["sections"]
    assert summary["dry_run"] and summary["failed_sections"] == [] and set(sections) == set(bench_gpu.SECTIONS)
    assert summary[bench_gpu.ALLOCATOR_ENV] == "expandable_segments:True"  # the default when the caller sets none

    msda = sections["msda"]
    assert msda["shapes"]["queries"] == 4820 and msda["cpp_cpu"]["max_abs_diff_vs_pytorch"] < 1e-4
    assert msda["auto"]["max_abs_diff_vs_pytorch"] < 1e-4 and msda["auto_choices"] == {}  # one CPU kernel: no timing
    fps = sections["fps"]  # one timed video of 3 frames (the warm-up one untimed) in 0.25 s
    assert fps["eager"]["frames"] == 3 and fps["eager"]["fps"] == 12.0 and "compiled" not in fps
    # every way takes 0.25 s, so a one-sentence call 0.25 / 4 s, less than the three shared stages' 0.75 s:
    # the share is capped at 1, the cap is K = 4, and each speed-up (1) is a quarter of it
    speed = sections["sentences"]["speed"]
    assert speed["seconds"] == {"naive": 0.25, "all_at_once": 0.25, "two_per_pass": 0.25}
    assert speed["shared_fraction"] == 1.0 and speed["cap"] == 4.0
    assert speed["fraction_of_cap"] == {"all_at_once": 0.25, "two_per_pass": 0.25}
    float32 = sections["sentences"]["differences"]["float32"]
    # float32: one call with K sentences = K calls up to the order of sums (test_sentence_batching.py shows the ways
    # equal in float64); 1e-4 is 25x the measured 4e-6 here and far below what a batching error gives (another
    # sentence's or slot's mask: differences of 0.1 to 1)
    for way in ("all_at_once", "two_per_pass"):
        assert float32[way]["max_abs_diff"] < 1e-4 and all(float32[way]["slots_agree"])
    assert sections["train"]["lora_grad_norm"] > 0  # the LoRA weights receive a gradient
    ddp = sections["ddp"]
    assert ddp["grads_equal_on_all_ranks"] and ddp["allreduce_numel"] == summary["trainable_parameters"]


def test_sections_flag_runs_only_the_named_ones(capsys):
    bench_gpu.main(["--dry_run", "--json", "--repeat", "1", "--sections", "msda"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(summary["sections"]) == ["msda"] and "model_build_s" not in summary
