// A Java agent on java.net.http through egressguard: the JVM's proxy settings
// (-Dhttps.proxyHost/-Dhttps.proxyPort) pick the proxy, a truststore holding
// egressguard's CA (-Djavax.net.ssl.trustStore) lets TLS through, and the egressguard
// token is the API key. Run it with `java Agent.java` (JDK 11 or later).
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Agent {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder()
                .proxy(ProxySelector.getDefault()) // -Dhttps.proxyHost and -Dhttps.proxyPort
                .build();
        String body = "{\"model\": \"gpt-4o-mini\","
                + " \"messages\": [{\"role\": \"user\", \"content\": \"Say hello\"}]}";
        HttpRequest request = HttpRequest.newBuilder(
                        URI.create("https://api.openai.com/v1/chat/completions"))
                .header("Authorization", "Bearer " + System.getenv("EGRESSGUARD_TOKEN"))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body))
                .build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
        System.out.println(response.statusCode() + " " + response.body());
    }
}
