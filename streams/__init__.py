"""The Faust shell: app factory, settings, topics and codecs."""
