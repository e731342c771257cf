"""scripts/gpu_check.sh, the GPU smoke check, run tiny on the CPU so that it keeps working between GPU runs."""
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_tiny(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "GPU_CHECK_TINY": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("stage I:", "attention:", "sampling (", "detector:", "done in"):
        assert line in proc.stdout, proc.stdout
    r = json.loads(out.read_text())
    assert r["tiny"] and r["stage1"]["images_per_s"] > 0 and r["stage1"]["peak_host_rss_mb"] > 0
    assert r["attention"]["used"] in ("flash", "efficient", "cudnn", "math")
    s = r["sampling"]
    assert s["fp32_images_per_s"] > 0 and s["bf16_images_per_s"] > 0 and 0 <= s["max_pixel_difference"] <= 255
    assert "skipped" in r["detector"] or r["detector"]["images"] > 0
    assert r["failed"] == []
