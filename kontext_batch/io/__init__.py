"""Bytes in and out: the object stores behind every output URL, the guarded fetch of input and sample
URLs, and image formats.
"""
