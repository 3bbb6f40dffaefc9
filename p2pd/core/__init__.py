"""Pure codecs and protocol cores: nothing here imports twisted.internet."""
