"""Engine adapters, one folder each (``config.py`` + ``engine.py``), listed in ``registry``."""
