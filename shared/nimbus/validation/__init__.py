"""Record schemas and rules, declared once (YAML or code) and compiled to the engines that
check them: Arrow compute (the scoring pass) and Spark column expressions (the Spark
validation stage). Bad records go to quarantine with every reason they failed."""
