// The sandbox ("pause") program of the test node's pods: built by hack/node/build.sh and
// packed into an OCI image by hack/node/images.py, because registry.k8s.io is unreachable.
module smtpgate.io/hack/node/pause

go 1.26.0
