//! The PROXY protocol header (v1 text, v2 binary) that HAProxy and cloud L4
//! load balancers send first, naming the client's real address.
