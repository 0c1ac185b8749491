"""kagoflow: storefront behaviour stream in, the right mail at the right moment out.

The card's top-level folders ``streams/`` and ``agents/`` are importable as ``kagoflow.streams`` and
``kagoflow.agents`` (symlinks inside this package), so no bare ``agents``/``streams`` import name can
collide with other installed distributions.
"""

__version__ = "0.1.0"
