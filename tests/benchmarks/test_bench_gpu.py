"""bench_gpu.py --dry_run: every section of the prepared GPU benchmark runs on the CPU and reports sane figures."""
import json

import pytest

from benchmarks import bench_gpu

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dry_run_runs_every_section_and_ends_with_json(capsys):
    """Every section on the CPU; the compiled fps run is left to the slow gpu_check dry run (dynamo's tracing
    alone takes ~20 s here)."""
    bench_gpu.main(["--dry_run", "--json", "--repeat", "1", "--videos", "1", "--rounds", "1",
                    "--compile_backend", "none"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sections = summary["sections"]
    assert summary["dry_run"] and summary["failed_sections"] == [] and set(sections) == set(bench_gpu.SECTIONS)
    assert summary["PYTORCH_CUDA_ALLOC_CONF"]  # expandable segments unless the caller set something else

    msda = sections["msda"]
    assert msda["shapes"]["queries"] == 4820 and msda["cpp_cpu"]["max_abs_diff_vs_pytorch"] < 1e-4
    assert all(msda[name]["forward_ms"] > 0 and msda[name]["backward_ms"] > 0 for name in ("pytorch", "cpp_cpu"))
    assert msda["auto"]["max_abs_diff_vs_pytorch"] < 1e-4 and msda["auto_choices"] == {}  # one CPU kernel: no timing
    fps = sections["fps"]
    assert fps["eager"]["frames"] == 3 and fps["eager"]["fps"] > 0 and "compiled" not in fps
    # FLOPs from the counter: the tiny model's frame is between 1e8 and 1e10 FLOPs, and the FPS uses that rate
    assert 1e8 < fps["flops_per_frame"] < 1e10 and fps["peak_flops"] == bench_gpu.H200_BF16_PEAK
    assert fps["eager"]["fraction_of_peak"] == pytest.approx(fps["eager"]["fps"] * fps["flops_per_frame"] / 790e12)
    speed = sections["sentences"]["speed"]
    assert set(speed["seconds"]) == {"naive", "all_at_once", "two_per_pass"} and 0 < speed["shared_fraction"] <= 1
    assert speed["cap"] == pytest.approx(4 / (speed["shared_fraction"] + 4 * (1 - speed["shared_fraction"])))
    float32 = sections["sentences"]["differences"]["float32"]
    for way in ("all_at_once", "two_per_pass"):  # float32: one call with K sentences = K calls, to rounding
        assert float32[way]["max_abs_diff"] < 1e-4 and all(float32[way]["slots_agree"])
    assert sections["train"]["loss"] > 0 and sections["train"]["lora_grad_norm"] > 0
    ddp = sections["ddp"]
    assert ddp["grads_equal_on_all_ranks"] and ddp["allreduce_numel"] == summary["trainable_parameters"]


def test_sections_flag_runs_only_the_named_ones(capsys):
    bench_gpu.main(["--dry_run", "--json", "--repeat", "1", "--sections", "msda"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(summary["sections"]) == ["msda"] and "model_build_s" not in summary
