"""bench_gpu.py --dry_run: every section of the prepared GPU benchmark runs on the CPU and reports sane figures."""
import json

import pytest

from benchmarks import bench_gpu

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dry_run_runs_every_section_and_ends_with_json(capsys):
    bench_gpu.main(["--dry_run", "--json", "--repeat", "1", "--videos", "1"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sections = summary["sections"]
    assert summary["dry_run"] and summary["failed_sections"] == [] and set(sections) == set(bench_gpu.SECTIONS)

    msda = sections["msda"]
    assert msda["shapes"]["queries"] == 4820 and msda["cpp_cpu"]["max_abs_diff_vs_pytorch"] < 1e-4
    assert all(msda[name]["forward_ms"] > 0 and msda[name]["backward_ms"] > 0 for name in ("pytorch", "cpp_cpu"))
    assert sections["fps"]["frames"] == 3 and sections["fps"]["fps"] > 0
    assert sections["sentences"]["max_abs_diff"] < 1e-4  # float32: one call with K sentences = K calls
    assert sections["train"]["loss"] > 0 and sections["train"]["lora_grad_norm"] > 0
    ddp = sections["ddp"]
    assert ddp["grads_equal_on_all_ranks"] and ddp["allreduce_numel"] == summary["trainable_parameters"]


def test_sections_flag_runs_only_the_named_ones(capsys):
    bench_gpu.main(["--dry_run", "--json", "--repeat", "1", "--sections", "msda"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(summary["sections"]) == ["msda"] and "model_build_s" not in summary
