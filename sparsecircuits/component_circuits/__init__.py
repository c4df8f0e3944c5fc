"""Component circuits: heads, MLPs and the edges between them, on the component graph
(`component_graph`, bound to a task by `prepare`). Methods: EAP and EAP-IG (`eap`), exact node/edge
patching, path patching, ACDC and Lan, Torr & Barez (2024)'s iterative pruning (`patching`), their
registry (`methods`), head roles (`head_roles`) and faithfulness / completeness / cross-task
comparison (`evaluation`)."""
