"""Real sites: building footprints from geodata files, georeferenced radio maps out.

  footprints  read footprints (any vector format GDAL reads, or an OpenStreetMap extract) in metres
  sites       transmitter sites from a CSV, in lon/lat or the footprints' CRS
  window      the 256 m window around a site: georeference and building raster
  geotiff     GeoTIFF (float32 dB, NaN on buildings) and PNG preview output
  mosaic      best-server coverage over many sites
  predict     the whole path: irt4-infer --footprints FILE --sites CSV --out DIR

Needs the [geo] extra (pyogrio, pyproj, rasterio, osmium; `make install` includes it).
"""
