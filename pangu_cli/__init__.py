"""pangu: bilingual text-to-image on MindSpore (PanGu-Draw).

Importing the package must stay cheap: nothing here may import MindSpore.
"""

__version__ = "0.1.0"
