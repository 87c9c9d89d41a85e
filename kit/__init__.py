"""The kit's machinery, under the scripts a user runs: `from kit import data, navigation`.

Importing the package itself loads nothing, so `from kit import navigation` stays NumPy-only.
"""
