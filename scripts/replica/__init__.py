"""The Colab replica (scripts/colab_replica.py): Colab's CPU image rebuilt from its published
package list, each notebook run in it as a new runtime, and the report."""
