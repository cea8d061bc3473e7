// Package deploy holds the Kubernetes manifests and the container image
// definition of SignalForge Serve (see README.md); it has no Go code. Its
// tests keep the manifests consistent with each other and with the server:
// the ConfigMap's configuration parses with the server's own strict parser,
// the probes, port, flags, environment names, volumes and labels agree
// between the Deployment, the Service, the HPA, the PDB and the KServe
// InferenceService, and the shutdown budget fits the grace period. The
// monitoring manifests (ServiceMonitor, PrometheusRule, Grafana dashboard)
// name only metrics and labels that a server running in the test exports,
// and, where promtool is installed, their expressions parse and the alerts
// pass their unit tests.
//
// Read README.md for how to build the image and deploy; `go test ./deploy/`
// runs the consistency checks.
package deploy
