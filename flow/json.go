package flow

// View is a flow as printed by `ctsyncctl dump --json`: readable names,
// stable field names.
type View struct {
	Family     string   `json:"family"`
	Proto      string   `json:"proto"`
	State      string   `json:"state,omitempty"`
	Timeout    uint32   `json:"timeout"`
	Src        string   `json:"src"`
	Dst        string   `json:"dst"`
	Sport      uint16   `json:"sport"`
	Dport      uint16   `json:"dport"`
	ReplySrc   string   `json:"reply_src"`
	ReplyDst   string   `json:"reply_dst"`
	ReplySport uint16   `json:"reply_sport"`
	ReplyDport uint16   `json:"reply_dport"`
	Status     []string `json:"status"`
	Mark       uint32   `json:"mark"`
	Zone       uint16   `json:"zone"`
	NAT        bool     `json:"nat"`
	Helper     string   `json:"helper,omitempty"`
	Labels     string   `json:"labels,omitempty"`
	Origin     string   `json:"origin,omitempty"`
	IdleSecs   float64  `json:"idle_seconds"`
}

var statusNames = []string{"EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT",
	"SEQ_ADJUST", "SRC_NAT_DONE", "DST_NAT_DONE", "DYING", "FIXED_TIMEOUT", "TEMPLATE", "UNTRACKED",
	"HELPER", "OFFLOAD"}

// StatusNames lists the names of the set status bits.
func StatusNames(s uint32) []string {
	out := []string{}
	for i, n := range statusNames {
		if s&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// View returns the flow's printable form.
func (f *Flow) View() View {
	v := View{
		Family: familyName(f.Family), Proto: ProtoName(f.Proto), Timeout: f.Timeout,
		Src: f.SrcAddr().String(), Dst: f.DstAddr().String(), Sport: f.Orig.SrcPort, Dport: f.Orig.DstPort,
		ReplySrc: f.ReplySrcAddr().String(), ReplyDst: f.ReplyDstAddr().String(),
		ReplySport: f.Reply.SrcPort, ReplyDport: f.Reply.DstPort,
		Status: StatusNames(f.Status), Mark: f.Mark, Zone: f.Zone, NAT: f.NATed(),
	}
	if f.Proto == ProtoTCP {
		v.State = TCPStateName(f.TCP.State)
	}
	if f.Extra != nil {
		v.Helper = f.Extra.Helper
		if f.Extra.Labels != ([16]byte{}) {
			v.Labels = LabelsHex(f.Extra.Labels)
		}
	}
	return v
}
