"""S3 server fixtures (moto and nanio on 127.0.0.1); filled in by the S3 work."""
