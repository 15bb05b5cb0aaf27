"""rdd: distil many-step diffusion models into 1-, 2- or 4-step generators (PD, RCFD, RDD)."""

__version__ = "0.1.0"
