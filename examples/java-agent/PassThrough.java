// A download from a pass-through host (not a model vendor: a package index, say)
// through egressguard, which wants the token in Proxy-Authorization there. The JDK
// answers the proxy's Basic challenge only when started with
// -Djdk.http.auth.tunneling.disabledSchemes= (Basic is disabled for HTTPS tunnels by
// default), and only from an Authenticator.
import java.net.Authenticator;
import java.net.PasswordAuthentication;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class PassThrough {
    public static void main(String[] args) throws Exception {
        String agent = System.getenv("EGRESSGUARD_AGENT");
        char[] token = System.getenv("EGRESSGUARD_TOKEN").toCharArray();
        HttpClient client = HttpClient.newBuilder()
                .proxy(ProxySelector.getDefault())
                .authenticator(new Authenticator() {
                    @Override
                    protected PasswordAuthentication getPasswordAuthentication() {
                        return getRequestorType() == RequestorType.PROXY
                                ? new PasswordAuthentication(agent, token) : null;
                    }
                })
                .build();
        HttpRequest request = HttpRequest.newBuilder(URI.create(args[0])).build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
        System.out.println(response.statusCode() + " " + response.body());
    }
}
