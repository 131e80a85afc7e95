"""What `pip install .` (not -e) ships: every folder of hw3 with Python in it is a package setuptools finds."""

from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_folder_of_hw3_is_a_package_a_wheel_ships():
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hw3").rglob("*.py") if "__pycache__" not in p.parts
    }
    assert folders <= set(find_packages(str(ROOT), include=["hw3", "hw3.*"]))
