"""Bytes in and out, for the enqueue and the workers alike (nothing here imports the manifest package).

===========  ======================================================================================
module       what it holds
===========  ======================================================================================
names        which object names are allowed, and the layout a run writes (results.csv, sidecars...)
stores       the object stores behind every output URL (local, memory, S3, GCS, Azure)
read         :func:`~kontext_batch.io.read.read_url`: one whole object by any URL, capped
fetch        the one guarded http(s) fetch: redirects, byte cap, deadline, URLs shown redacted
netguard     which network addresses a fetch may reach
images       input image bytes: the API's limits, the decode check, normalisation
payload      what a worker puts in a request's ``input_image`` fields
formats      output formats: ask a provider for one it offers, transcode to the one asked for
===========  ======================================================================================
"""
