"""Server strategies: pure aggregation maths (numpy), no Ray, no torch."""
