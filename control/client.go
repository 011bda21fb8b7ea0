package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Do sends req to the daemon listening on path and streams the answer's data
// to out. It returns nil when the command succeeded.
func Do(path string, req Request, out io.Writer) error {
	req.Version = Version
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return fmt.Errorf("cannot reach ctsyncd at %s (is it running? --socket?): %w", path, err)
	}
	defer c.Close()
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := c.Write(append(b, '\n')); err != nil {
		// The daemon may have answered and closed before reading (e.g.
		// "busy"): its answer is still there to read.
		if rerr := ReadResponse(c, out); errors.Is(rerr, ErrFailed) {
			return rerr
		}
		return fmt.Errorf("send to ctsyncd: %w", err)
	}
	return ReadResponse(c, out)
}
