"""The three top-level folders install as subpackages of one import package, in both install modes."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_only_the_cleanloop_package_and_the_bundled_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("cleanloop-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"cleanloop", wheel.name.split("-py3")[0] + ".dist-info"}
    for must in ("cleanloop/model/data.py", "cleanloop/labeling/embedded/server.py", "cleanloop/loops/flag.py",
                 "cleanloop/cli/__init__.py", "cleanloop/model/datasets/emotion/train.parquet"):
        assert must in names, must

    # a normal (non-editable) install of that wheel imports from its own folder, not from the checkout
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import cleanloop.model.data as d, cleanloop.labeling, cleanloop.loops; "
            "print(d.__file__); print(d.bundled_emotion_dir() / 'test.parquet')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         check=True, capture_output=True, text=True).stdout.split()
    assert out[0].startswith(str(target)) and Path(out[1]).exists()


def test_editable_install_maps_the_top_level_folders():
    # the README's test command installs with `pip install -e .`
    import cleanloop.labeling
    import cleanloop.loops
    import cleanloop.model

    for pkg, folder in ((cleanloop.model, "model"), (cleanloop.labeling, "labeling"), (cleanloop.loops, "loops")):
        assert Path(pkg.__file__).resolve().parent == ROOT / folder
