"""The suite's scenarios P1-P7, one module each (see ``bench/__main__.py``)."""
