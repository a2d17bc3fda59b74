"""Build hook: ship ``nnunetv2_mapo.pth`` so that nnU-Net finds the MAPO trainers with no extra step.

All metadata lives in ``setup.cfg``. The only thing this file adds is a one-line ``.pth`` file at the root of
site-packages. Python runs it at start-up; it imports the tiny ``nnunetv2_mapo.discovery`` module (standard
library only, no torch), which appends this package's trainer folder to ``nnUNet_extTrainer``. Set
``NNUNETV2_MAPO_NO_AUTOREGISTER=1`` to switch that off.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "nnunetv2_mapo.pth"
PTH_LINE = (
    "import os, sys; exec('try:\\n import nnunetv2_mapo.discovery as _m\\n _m.autoregister()\\n"
    "except Exception:\\n pass') if not os.environ.get('NNUNETV2_MAPO_NO_AUTOREGISTER') else None\n"
)


class BuildPyWithPth(build_py):
    """``build_py`` that also writes the start-up ``.pth`` file next to the package."""

    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, PTH_NAME)
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(PTH_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH_NAME)]


setup(cmdclass={"build_py": BuildPyWithPth})
