"""Colab's kernel class, started by the replica's kernelspec
(`--IPKernelApp.kernel_class=google.colab._kernel.Kernel`): it imports google.colab before
any cell runs, as Colab's kernel does, and gives every cell Colab's shell class."""

from google.colab import _shell
from ipykernel import ipkernel


class Kernel(ipkernel.IPythonKernel):
    """IPython's kernel with Colab's shell."""

    def _shell_class_default(self):
        return _shell.Shell
