"""A stand-in for Colab's `google.colab`, installed only in the course's Colab replica.

scripts/colab_replica.py runs each notebook as a new Colab CPU runtime; what the course and
its libraries use of Colab's package is here, with Colab's names (googlecolab/colabtools,
google/colab): `userdata.get` (secrets), `drive.mount`, and the kernel and shell classes
that make `"google.colab" in str(get_ipython())` true, as it is on Colab.
"""

from google.colab import drive, errors, userdata

__all__ = ["drive", "errors", "userdata"]
__version__ = "0.0.1a2"  # Colab's google/colab/__init__.py
