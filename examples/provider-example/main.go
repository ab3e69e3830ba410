// Command keyctl-provider-example is a small third-party keyctl provider: a
// plugin built only against github.com/keyctl/keyctl/plugin and
// github.com/keyctl/keyctl/core. Its KEK is a 32-byte AES key given (in
// hex) through the environment; it has one version, "1". It shows the
// shape of a provider plugin, not a place to keep a master key.
//
// Build it, then name it in keyctl.hcl with its checksum:
//
//	go build -o keyctl-provider-example ./examples/provider-example
//	sha256sum keyctl-provider-example
//
//	provider "example" "ext" {
//	  plugin = "./keyctl-provider-example"
//	  sha256 = "<the sha256sum output>"
//	  key_id = "demo"
//	  key    = env("EXAMPLE_KEK_HEX")
//	}
package main

import "github.com/keyctl/keyctl/plugin"

func main() {
	plugin.Serve(Definition)
}
