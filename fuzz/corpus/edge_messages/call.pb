
sightline.v1.Ingest/Session