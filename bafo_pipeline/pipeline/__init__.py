"""Pipeline layer: jobs built from the layers below (the distributed export lives in ``distributed``)."""
