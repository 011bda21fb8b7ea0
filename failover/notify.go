package failover

import (
	"fmt"
	"strconv"
)

// State is a VRRP state as keepalived names it in notify calls.
type State string

// The states keepalived passes to a notify script (always upper case).
const (
	Master  State = "MASTER"
	Backup  State = "BACKUP"
	Fault   State = "FAULT"
	Stop    State = "STOP"    // keepalived is stopping (instances only)
	Deleted State = "DELETED" // the instance was removed by a reload (with notify_deleted)
)

// Kind says whether a notify is about a vrrp_instance or a vrrp_sync_group.
type Kind string

// Kinds of notify.
const (
	Instance Kind = "INSTANCE"
	Group    Kind = "GROUP"
)

// Notify is one keepalived notify call: `notify "/usr/sbin/ctsyncctl
// keepalived"` makes keepalived run ctsyncctl keepalived TYPE NAME STATE
// PRIORITY.
type Notify struct {
	Kind  Kind   `json:"type"`
	Name  string `json:"name"`
	State State  `json:"state"`
	// Priority is the priority keepalived passed, -1 when it passed none.
	// keepalived 2.2.7 passes 0 for a GROUP (test/cluster's
	// TestClusterNotify records "GROUP FW MASTER 0"), the instance's
	// effective priority for an INSTANCE.
	Priority int `json:"priority"`
}

func (n Notify) String() string {
	if n.Priority < 0 {
		return fmt.Sprintf("%s %s %s", n.Kind, n.Name, n.State)
	}
	return fmt.Sprintf("%s %s %s %d", n.Kind, n.Name, n.State, n.Priority)
}

// ParseNotify parses the arguments keepalived passes to a notify script:
// TYPE NAME STATE [PRIORITY], where TYPE is GROUP or INSTANCE and STATE one
// of MASTER, BACKUP, FAULT, STOP, DELETED, exactly as keepalived writes them
// (upper case). Errors match ErrNotify and say which argument is wrong.
func ParseNotify(args []string) (Notify, error) {
	if len(args) < 3 || len(args) > 4 {
		return Notify{}, fmt.Errorf("%w: want TYPE NAME STATE [PRIORITY], got %d arguments", ErrNotify, len(args))
	}
	n := Notify{Kind: Kind(args[0]), Name: args[1], State: State(args[2]), Priority: -1}
	switch n.Kind {
	case Instance, Group:
	default:
		return Notify{}, fmt.Errorf("%w: type %q is not INSTANCE or GROUP", ErrNotify, args[0])
	}
	if n.Name == "" {
		return Notify{}, fmt.Errorf("%w: empty name", ErrNotify)
	}
	switch n.State {
	case Master, Backup, Fault, Stop, Deleted:
	default:
		return Notify{}, fmt.Errorf("%w: state %q is not MASTER, BACKUP, FAULT, STOP or DELETED", ErrNotify, args[2])
	}
	if len(args) == 4 {
		p, err := strconv.Atoi(args[3])
		if err != nil || p < 0 || p > 255 {
			return Notify{}, fmt.Errorf("%w: priority %q is not a number 0..255", ErrNotify, args[3])
		}
		n.Priority = p
	}
	return n, nil
}
