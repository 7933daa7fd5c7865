"""One distribution, one top-level package: the wheel holds mmadapt/ only, and its sub-packages import from it."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBPACKAGES = ["mmadapt.encoders.base", "mmadapt.connectors.projector", "mmadapt.rag", "mmadapt.editing"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
                   check=True, capture_output=True)
    return next(out.glob("mmadapt-*.whl"))


def test_wheel_has_exactly_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"mmadapt", next(t for t in tops if t.endswith(".dist-info"))}
    for folder in ("encoders", "connectors", "rag", "editing"):
        assert f"mmadapt/{folder}/__init__.py" in names
    assert "mmadapt/quickstart/configs/vlm.yaml" in names
    assert "mmadapt/ui/static/index.html" in names  # the web app ships its page


def test_built_wheel_imports_subpackages(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    # The dependencies live wherever the running interpreter found them (a fresh venv, not the system
    # site-packages), so the test venv sees exactly those directories through a .pth file; directories
    # named in a .pth are plain path entries, so the editable install's own finder there stays inactive
    # and mmadapt is imported from the extracted wheel, which comes first on the path.
    venv.create(env_dir, system_site_packages=False, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    zipfile.ZipFile(wheel).extractall(site)
    # every site directory the running interpreter imports from (a venv layered on system site-packages has two)
    borrowed = dict.fromkeys(p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and p != site)
    (Path(site) / "_mmadapt_test_deps.pth").write_text("".join(f"{p}\n" for p in borrowed))
    code = "import mmadapt, importlib; [importlib.import_module(m) for m in %r]; print(mmadapt.__file__)" % SUBPACKAGES
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(site)


def test_editable_install_imports_subpackages(tmp_path):
    code = "import importlib; [importlib.import_module(m) for m in %r]" % SUBPACKAGES
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
