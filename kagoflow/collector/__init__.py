"""The beacon collector (``kagoflow collect``): storefront beacons over HTTP into partition-batched records."""
