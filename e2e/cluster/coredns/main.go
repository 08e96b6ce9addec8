// Command coredns is the cluster DNS of Braid's test cluster: CoreDNS from its Go module, with
// only the plugins the cluster's Corefile uses (bind, errors, cache, kubernetes).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

func init() {
	// The plugins' order in a server block, as upstream's plugin.cfg orders them.
	dnsserver.Directives = []string{"bind", "errors", "cache", "kubernetes"}
}

func main() { coremain.Run() }
