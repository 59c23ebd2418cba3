"""The MLflow life cycle: the tracking store (store), training metrics that outlive an outage (metric_log), a trained
model as a pyfunc (packaging, requirements) and the Model Registry (registry)."""
