"""Example user policies (each one class; select with its YAML file in conf/policy/)."""
