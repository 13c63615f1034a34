//go:build tools

// Package tools pins etcd's server command. etcd's own go.mod has local replace
// directives, so `go install go.etcd.io/etcd/server/v3@...` is refused; building the
// package from inside this module works because replaces in dependencies are ignored.
package tools

import _ "go.etcd.io/etcd/server/v3"
