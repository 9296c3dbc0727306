"""The providers' side of a call, for `voicecli simulate` and the tests."""
