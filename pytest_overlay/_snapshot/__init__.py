"""Snapshot layers: expensive setup built once, frozen as a read-only layer, stacked under tests.

* :mod:`.factory` is the ``overlay_layer`` factory and the marker's ``layers=``;
* :mod:`.build` runs one build, capturing its output and turning a failure into a short message;
* :mod:`.cache` keys, stores, finds and prunes the built layers across runs.

"Layer" alone, elsewhere in the package, means an overlayfs layer (:mod:`.._layers` reads a
stack of them, :mod:`.._layerwrite` writes one); here it means a snapshot layer.
"""
