// Command etcd is the etcd server of Braid's test cluster, built from the official
// go.etcd.io/etcd/server/v3 Go module (upstream's own main, which cannot be installed with
// `go install` because its go.mod carries relative replace directives).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
