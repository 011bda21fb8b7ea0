package config_test

import (
	"errors"
	"fmt"

	"github.com/ctsyncd/ctsyncd/config"
)

func ExampleParse() {
	src := `[sync]
transport = "tcp"
listen = "10.200.0.1:3780"
peers = ["fw-b:3780"]
key_file = "/etc/ctsyncd/sync.key"
`
	_, err := config.Parse("/etc/ctsyncd/ctsyncd.toml", []byte(src))
	fmt.Println(err)
	fmt.Println(errors.Is(err, config.ErrInvalid))
	// Output:
	// /etc/ctsyncd/ctsyncd.toml:2: sync.transport: "tcp" is not one of udp, multicast, gossip
	// /etc/ctsyncd/ctsyncd.toml:4: sync.peers: "fw-b:3780": "fw-b" is not an IP address (hostnames are not resolved: write the address)
	// true
}

func ExampleParse_unknownKey() {
	src := `[sync]
disabled = true

[filter]
protocol = ["tcp"]
`
	_, err := config.Parse("ctsyncd.toml", []byte(src))
	var e *config.Error
	if errors.As(err, &e) {
		fmt.Println(e.Line, e.Key)
	}
	fmt.Println(err)
	// Output:
	// 5 filter.protocol
	// ctsyncd.toml:5: filter.protocol: unknown key; did you mean protocols?
}
