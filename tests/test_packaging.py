"""The package ships every impls/<technique>/ folder (setuptools lists packages explicitly) and the console script."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_impl_folder_is_a_listed_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    folders = {f"llmopt.impls.{p.name}" for p in (ROOT / "impls").iterdir() if (p / "__init__.py").exists()}
    assert folders <= listed, f"add to pyproject.toml packages: {sorted(folders - listed)}"
    assert config["project"]["scripts"]["llmopt"] == "llmopt.bench.cli:main"
