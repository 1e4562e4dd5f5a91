"""Ships the top-level ``conf/`` tree inside the package (``evojax_merge/conf``), so a non-editable
install (a wheel) carries its Hydra configs. An editable install reads ``conf/`` in place."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    def run(self):
        super().run()
        src = Path(__file__).resolve().parent / "conf"
        if src.is_dir():
            shutil.copytree(src, Path(self.build_lib) / "evojax_merge" / "conf", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithConf})
