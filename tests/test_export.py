"""`siamax export`: the model as StableHLO that JAX alone runs, equal to siamax.score at any batch size."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from siamax import api, checkpoint, cli, stablehlo

# The loader a user copies from the docs (stablehlo.LOADER), run where siamax is never imported.
SCRIPT = """
import sys
import numpy as np
x = np.load(sys.argv[1])
x1, x2 = x["a"], x["b"]
{loader}
assert "siamax" not in sys.modules, "the loader imported siamax"
out = {{
    "p5": np.asarray(fns["score"].call(x["a"], x["b"])),
    "p1": np.asarray(fns["score"].call(x["a"][:1], x["b"][:1])),
    "e3": np.asarray(fns["embed"].call(x["a"][:3])),
    "s3": np.asarray(fns["score_embeddings"].call(fns["embed"].call(x["a"][:3]), fns["embed"].call(x["b"][:3]))),
    "same": same,
}}
np.savez(sys.argv[2], **out)
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    params = api.init(jax.random.key(0), "tiny")
    checkpoint.export(params, root / "m", metadata={"ink": "dark", "threshold": 0.25})
    return params, root / "m"


@pytest.mark.slow  # a subprocess without siamax
def test_export_runs_with_jax_alone_and_equals_siamax_score(model, tmp_path, capsys):
    params, path = model
    out = tmp_path / "hlo"
    assert cli.main(["export", str(path), str(out)]) == 0
    assert "written to" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    s = params.spec.input_size
    assert manifest["input_shape"] == [s, s, 1] and manifest["threshold"] == 0.25 and manifest["channels"] == 1
    assert manifest["fingerprint"] == checkpoint.fingerprint(params) and manifest["energy"] == params.spec.energy
    assert set(manifest["functions"]) == {"embed", "score", "score_embeddings"}
    rng = np.random.default_rng(0)
    a, b = (rng.random((5, s, s, 1), dtype=np.float32) for _ in range(2))
    np.savez(tmp_path / "x.npz", a=a, b=b)
    script = SCRIPT.format(loader=stablehlo.LOADER.format(out=out))
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.npz"), str(tmp_path / "y.npz")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    y = np.load(tmp_path / "y.npz")
    want = np.asarray(api.score(params, a, b))
    np.testing.assert_allclose(y["p5"], want, atol=1e-5)  # batch 5 ...
    np.testing.assert_allclose(y["p1"], want[:1], atol=1e-5)  # ... and batch 1, from one export
    np.testing.assert_allclose(y["e3"], np.asarray(api.embed(params, a[:3])), atol=1e-5)
    np.testing.assert_allclose(y["s3"], want[:3], atol=1e-5)
    np.testing.assert_array_equal(y["same"], want >= 0.25)


def test_export_refuses_a_folder_that_is_not_an_export_and_overwrites_only_when_told(model, tmp_path, capsys):
    _, path = model
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert cli.main(["export", str(path), str(tmp_path / "busy")]) == 2
    assert "not a siamax export" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    out = tmp_path / "hlo"
    assert cli.main(["export", str(path), str(out)]) == 0
    assert cli.main(["export", str(path), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["export", str(path), str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "hlo"]  # no temporary folder left behind
    assert cli.main(["export", str(tmp_path / "missing"), str(tmp_path / "new")]) == 2
    assert "no exported siamax model" in capsys.readouterr().err and not (tmp_path / "new").exists()
