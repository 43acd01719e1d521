from perfusion.version import __version__
