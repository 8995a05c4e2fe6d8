"""MindSpore networks. Submodules import MindSpore; this package file does not.

Importing the package applies the CPU ISA setting first, because oneDNN reads it only once,
when MindSpore loads.
"""

from pangu_cli.runtime import configure_cpu_isa

configure_cpu_isa()
