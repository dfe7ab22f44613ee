"""The benchmark: the pipeline of `invoke bench` (plan -> prepare -> run -> publish), the order of
runs, running and measuring one port process, the host record and its roofline probe."""
